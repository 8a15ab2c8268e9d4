"""Forwarding of names outside the cluster zones to upstream resolvers."""
