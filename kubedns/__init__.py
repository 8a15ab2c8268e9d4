"""kubedns: a Kubernetes cluster DNS server on Twisted, a drop-in for CoreDNS."""

__version__ = "0.1.0"
