"""supervise-smtp: tells the postmaster why each qmail-smtpd connection ended."""

__version__ = "0.1.0"
__all__ = ["__version__"]
