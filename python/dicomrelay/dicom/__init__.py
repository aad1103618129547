"""DICOM networking (PS3.7, PS3.8): the Upper Layer state machine, DIMSE, and
the C-ECHO and C-STORE services, as SCU and SCP."""
