"""Reading a Corefile (CoreDNS's configuration file) into kubedns's config objects."""
