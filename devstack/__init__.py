"""Local stand-ins and launchers for the outside world; used by `make demo` and the tests, never by flows."""
