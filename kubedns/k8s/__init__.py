"""Kubernetes side: slim object records, the store, and the list+watch threads."""
