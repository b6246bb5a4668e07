"""CRM writers: one module per CRM, all behind the Writer interface in base.py."""
