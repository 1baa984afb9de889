"""The command line's parts: the parser (``cli.parser``) and the conversion of parsed options into the library's
values (``cli.options``). ``suite.py`` runs the commands: it parses with these, calls the library and prints.
Only ``suite.py`` imports this package."""
