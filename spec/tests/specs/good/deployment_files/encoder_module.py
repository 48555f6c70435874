"""Imported by Jina as it loads deployment_files/encoder.yml (the golden case deployment_files)."""
