"""The `cggm-seg` subcommands: argument parsing and printing only, one module a subcommand.

Each module exposes ``add_arguments(parser)`` and ``main(args) -> int`` and calls library functions;
no library module imports from here (``tests/packaging/test_layering.py`` checks it).
"""
