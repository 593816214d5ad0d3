"""What several commands do, below the command modules: arguments (`args`), resolving a config and cluster
options from them (`resolve`), deciding, submitting and following runs (`launch`), and writing out (`output`).
Command modules (orchestrator/commands/) import these; these import no command module."""
