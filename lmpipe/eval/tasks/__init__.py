"""lmpipe's own lm-eval task files (YAML) and their document processing (utils.py)."""
