// drizzle-kit configuration for the MCP Manager target schema.
// `npx drizzle-kit generate` writes ./migrations from ./schema.ts; `npx drizzle-kit migrate`
// applies them to DATABASE_URL (transforms/mcp_manager/target_schema.py sets it).
import { defineConfig } from "drizzle-kit";

export default defineConfig({
  dialect: "postgresql",
  schema: "./schema.ts",
  out: "./migrations",
  dbCredentials: {
    // generate does not connect; only migrate needs a real URL.
    url: process.env.DATABASE_URL ?? "postgresql://localhost/unset",
  },
  verbose: false,
});
