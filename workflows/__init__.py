"""Prefect flows and the CLI: orchestration only; the domain logic lives in the packages."""
