"""Wire format and answers: reading queries and encoding answers (wire), the Kubernetes DNS
specification as code (records), the per-query records every layer shares (query) and what a
cluster answer depends on (depends). Imports nothing above it but kubedns.k8s objects and store.
"""
