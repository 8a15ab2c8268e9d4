"""Helpers shared by test modules and bench scripts.

Test modules never import each other: whatever two of them need lives here (or in
``tests/conftest.py`` for fixtures and the process/query helpers), so that a test module can be
read, run and changed on its own.  ``tests/test_layout.py`` keeps it that way.

- :mod:`tests.support.kubeobj`: Kubernetes objects as the API server returns them, and a kubeconfig;
- :mod:`tests.support.cluster`: manifests files and the configs that serve them;
- :mod:`tests.support.records_table`: the record table and the store it is answered from;
- :mod:`tests.support.dispatch`: a Dispatcher over that store behind the real UDP protocol;
- :mod:`tests.support.informer`: tuning and objects for informer tests on the fake API server;
- :mod:`tests.support.forwarding`: the trial base class of the forwarding tests;
- :mod:`tests.support.ops`: metric samples and query records of the operations tests;
- :mod:`tests.support.listpages`: LIST pages as the apiserver writes them, and malformed ones;
- :mod:`tests.support.unit`: the systemd unit's install steps.
"""
