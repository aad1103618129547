"""Integration tests of the transfer engine: real nodes on loopback, mutual TLS,
SQLite ledgers, files on disk, and real processes killed with SIGKILL."""
