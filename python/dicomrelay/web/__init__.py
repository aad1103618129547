"""DICOMweb (PS3.18) on a node: STOW-RS, QIDO-RS and WADO-RS over its store
and ledger, for the callers its tokens and certificates admit; in the same
server, patient links (``links.py``), ``/metrics`` and the operators'
``/status`` page. Needs the ``web`` extra (``pip install 'dicomrelay[web]'``)."""
