"""Node-local cache mode: the link-local interface and NOTRACK rules it sets up through netlink.
"""
