// The front end's Better-Auth instance, as the TypeScript side configures it after the
// consolidation: Drizzle adapter over ./schema.ts, admin + organization + API-key plugins.
//
// Two settings exist for the migration:
// - ids are UUIDs (generated here, not by the database: the text id columns have no default), so
//   that a user who signs up after cutover has an id the legacy `uuid` columns accept on rollback;
// - passwords: legacy hashes are bcrypt ($2b$, passlib) or argon2id ($argon2id$, pwdlib) and are
//   migrated as they are, so `verify` dispatches on the hash format. New hashes are bcrypt, which
//   the legacy FastAPI backend can check for as long as a rollback is possible.
// - API keys: the plugin's default hasher (SHA-256, base64url) is the legacy digest respelled,
//   so migrated keys verify as they are. Its owner field is the schema's user_id (the legacy
//   column name); migrated keys are not rate limited (the mapping writes them so).
import { randomUUID } from "node:crypto";
import { apiKey } from "@better-auth/api-key";
import { verify as argon2Verify } from "@node-rs/argon2";
import bcrypt from "bcryptjs";
import { betterAuth } from "better-auth";
import { drizzleAdapter } from "better-auth/adapters/drizzle";
import { admin, organization } from "better-auth/plugins";
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import * as schema from "./schema.js";

// Same cost as the legacy backend's passlib default.
const BCRYPT_ROUNDS = 12;

export async function hashPassword(password: string): Promise<string> {
  return bcrypt.hash(password, BCRYPT_ROUNDS);
}

export async function verifyPassword({ hash, password }: { hash: string; password: string }) {
  if (/^\$2[aby]\$\d\d\$/.test(hash)) return bcrypt.compare(password, hash);
  if (hash.startsWith("$argon2")) {
    try {
      return await argon2Verify(hash, password);
    } catch {
      return false; // a malformed argon2 string matches no password
    }
  }
  // '' (a legacy user created without a password) or an unknown scheme: no password matches.
  return false;
}

export function createAuth(databaseUrl: string) {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 4 });
  const db = drizzle(pool, { schema });
  const auth = betterAuth({
    baseURL: process.env.BETTER_AUTH_URL ?? "http://localhost:3000",
    secret: process.env.BETTER_AUTH_SECRET,
    database: drizzleAdapter(db, { provider: "pg", schema }),
    emailAndPassword: {
      enabled: true,
      password: { hash: hashPassword, verify: verifyPassword },
    },
    advanced: { database: { generateId: () => randomUUID() } },
    plugins: [
      admin(),
      organization(),
      apiKey({
        enableMetadata: true,
        schema: { apikey: { fields: { referenceId: "userId" } } },
      }),
    ],
    telemetry: { enabled: false },
  });
  return { auth, close: () => pool.end() };
}
