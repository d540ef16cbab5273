"""One module per `edgeprune` subcommand: parse the options, call one library function, print the result."""
