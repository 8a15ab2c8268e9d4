"""What every cluster source is to the code that runs it: a service filling a store.

Two kinds of source fill a :class:`~kubedns.k8s.store.Store`: the
:class:`~kubedns.k8s.informer.Informer` (list and watch the API) and the
:class:`~kubedns.k8s.manifests.ManifestSource` (a file of objects).  What runs them asks each the
same two things: the /ready probe and the reload warning want the error keeping it from syncing,
SIGHUP wants credentials re-read now.  Both derive from :class:`ClusterSource`, so those callers
ask it directly instead of probing for attributes one kind has and the other lacks.
"""

from __future__ import annotations

from twisted.application.service import Service

__all__ = ["ClusterSource"]


class ClusterSource(Service):
    """A service that keeps a store in step with the cluster."""

    def problem(self) -> str:
        """The error keeping this source from syncing (or from staying in step), or ``""``."""
        return ""

    def reload_credentials(self) -> None:
        """SIGHUP: retry at once with credentials read again (a kubeconfig fixed on disk).

        Nothing to do for a source without credentials.
        """
