from twisted.application.service import ServiceMaker

refresherd = ServiceMaker(
    "refresherd",
    "refresherd.run.tap",
    "A cache-refresh service: stale-while-revalidate with single-flight over HTTP.",
    "refresherd",
)
