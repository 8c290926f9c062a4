"""Configuration: every setting from the environment (`settings.py`), secret values by variable
name (`secrets.py`), the tenants file's models (`models.py`), its registry (`registry.py`) and
what it may not hold (`credentials.py`)."""
