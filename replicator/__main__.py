from replicator.cli import main

# Guarded: worker processes (spawned) import the parent's main module under another name.
if __name__ == "__main__":
    main()
