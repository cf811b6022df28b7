"""Video, query and track I/O shared by every CLI."""
