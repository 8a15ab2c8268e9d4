"""Transports and dispatch: UDP/TCP protocols, the listening sockets and worker processes, the
pre-encoded fast path and the dispatcher that hands each query to its server block's plugin chain.
"""
