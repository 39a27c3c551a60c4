"""An issue to messages to a transport: building, signing, the engine, SMTP and the outbox."""
