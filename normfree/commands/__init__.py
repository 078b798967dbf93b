"""Subcommands of the ``normfree`` CLI, one module each (see :data:`normfree.cli.SUBCOMMANDS`)."""
