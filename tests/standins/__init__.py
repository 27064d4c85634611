"""Small servers on 127.0.0.1 that speak the real protocols of services we cannot reach here."""
