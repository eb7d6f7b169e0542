"""ChurnGuard domain package: event schema, the one feature path, the TFLite scorer.

Shared by training and the Lambda functions (deployed as a layer). Importing it pulls in numpy only;
pandas-based modules (``events``, ``tabular``, ``datasets``) are imported explicitly where needed.
"""

__version__ = "0.1.0"
