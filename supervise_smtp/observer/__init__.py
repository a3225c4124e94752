"""Sans-IO SMTP observer (issue 3)."""
