"""Per-query plugins: each server block answers through an ordered chain of them
(:mod:`kubedns.plugins.base`), one small module per plugin, as CoreDNS's ``plugin/`` folder."""
