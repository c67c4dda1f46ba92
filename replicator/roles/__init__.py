"""What the replicator's roles must be allowed to do on each side, and the statements that grant
it: a managed server (RDS, Cloud SQL, Azure, Supabase, Neon) has no superuser (docs/managed.md)."""
