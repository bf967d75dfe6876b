"""
Integrations of refresherd with the frameworks that call it, on the client
side: L{refresherd.contrib.signing} checks the signatures of refresherd's
calls back into an application (any framework), L{refresherd.contrib.django}
is the Django integration (an optional extra: C{pip install
"refresherd[django]"}).

Like L{refresherd.client}, nothing here imports the server.
"""
