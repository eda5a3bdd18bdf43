"""Reading mail: POP3 over Maildir, and Dovecot's files for IMAP."""
