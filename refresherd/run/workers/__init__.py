"""
C{--workers N}: N processes serving the public API on one listening socket.

A process cannot fork once its reactor runs, so the workers are fresh
interpreters, and the socket is handed down to them:

- The parent (the process twistd started) binds the public listener in
  C{makeService}, as a single process does, so that a port in use is still a
  one-line start-up error; it never accepts on it (L{hold}).  It serves the
  admin listener itself, where C{/metrics} sums the metrics of every worker.
- L{Supervisor} starts each worker with C{reactor.spawnProcess}: the same
  interpreter running C{twistd -n --pidfile= refresherd} with the parent's
  options, the listening socket as file descriptor L{PUBLIC_FD}, one end of
  a socket pair as its lifeline on L{LIFELINE_FD}, the parent's standard
  output and error, and C{PROMETHEUS_MULTIPROC_DIR} naming a directory of
  the parent's where the worker writes its metrics.
- A worker adopts the socket (L{adopt}) and serves the public API on it with
  a refresher and a store connection of its own.  It says C{ready} on its
  lifeline once it runs; it stops, as on SIGTERM, when the lifeline closes:
  when the parent stops, and when the parent dies, even by SIGKILL.
- The parent restarts a worker that exits while the service runs, after a
  delay that doubles (up to L{MAX_RESTART_DELAY}) while it keeps exiting
  soon after it started.  When the parent stops, it closes its copy of the
  socket, closes every lifeline, and waits for the workers to finish what
  they are doing (then kills those that take longer than its stop timeout).

Only TCP and UNIX endpoints can be shared this way (L{shareable}).
"""
