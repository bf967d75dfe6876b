"""The HTTP faces: the site (limits, deadlines), the value fast path, the public and admin APIs."""
