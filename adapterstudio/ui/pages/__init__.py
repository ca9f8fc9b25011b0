"""One module (or package) per page of the main window."""
