"""The command line: each module a command group; options.py the shared options. Parse, call, print."""
