"""Local stand-ins for the outside world (design.md §6); used by `make demo` and the tests, never by flows."""
