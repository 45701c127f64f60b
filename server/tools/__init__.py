"""The `tandem` command and what it runs beside a server: admin commands, replay, history, blame
and the schema dump. Never imported by the server's layers."""
