"""etl-platform: multi-tenant ETL on Dagster and dlt.

Importing the package has no side effects: the entry points (`definitions.py`, `cli.py`, the read
API's app factory) configure logging and warning filters.
"""

__version__ = "0.1.0"
