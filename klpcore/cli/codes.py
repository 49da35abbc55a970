"""The numbers of the command-line contract (docs/cli.md): exit codes and the JSON schema version."""

from __future__ import annotations

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: version of the JSON documents the CLI writes (docs/json-schema.md)
SCHEMA_VERSION = 2
