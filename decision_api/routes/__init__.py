"""HTTP controllers, one file per resource; each stays thin: decode, call the domain, answer."""
