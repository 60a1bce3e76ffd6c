"""Small local stand-ins for the forges' HTTP APIs, spoken to over real loopback sockets."""
