"""The ``vesper`` command: one module per subcommand, each with add_arguments/run."""
