"""DICOMweb (PS3.18) on a node: STOW-RS, QIDO-RS and WADO-RS over its store
and ledger, for the callers its tokens and certificates admit. Needs the
``web`` extra (``pip install 'dicomrelay[web]'``)."""
