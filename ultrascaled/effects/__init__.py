"""Everything that touches the OS: processes, sockets and gates, files, nginx, releases."""
