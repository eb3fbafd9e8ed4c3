"""A minimal experiment outside the package, used by the contract tests (docs/experiments.md walks through it)."""
