"""Registers ``kubedns`` as a twistd subcommand; everything real lives in :mod:`kubedns.tap`."""

from twisted.application.service import ServiceMaker

kubedns = ServiceMaker("kubedns", "kubedns.tap", "Kubernetes cluster DNS server (CoreDNS drop-in).", "kubedns")
