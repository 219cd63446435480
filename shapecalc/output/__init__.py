"""Rendering: tables, Markdown and JSON, the width-aware layout, cost reports, domain pictures and
the generated size pages.  Nothing here prints."""
