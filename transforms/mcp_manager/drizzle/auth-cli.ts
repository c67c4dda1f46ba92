// Drives the real Better-Auth instance of ./auth.ts from the command line, the way the front end
// calls it: used by the integration tests and by operators checking migrated users after cutover.
//
//   DATABASE_URL=postgresql://… npx tsx auth-cli.ts sign-in <email> <password>
//   DATABASE_URL=postgresql://… npx tsx auth-cli.ts sign-up <email> <password> <name>
//   DATABASE_URL=postgresql://… npx tsx auth-cli.ts api-keys '<JSON list of operations>'
//
// api-keys runs, in one process, each of {"verify": KEY, "permissions": {...}?} (the API-key
// plugin's verifyApiKey, as an API client's request is checked) and {"create": NAME, "userId":
// ID, "permissions": {...}?, "prefix": "..."?} (createApiKey, server side), and prints one JSON
// list of their answers: {"valid": …, "code": …, "key": {id, userId, permissions}} per verify,
// {"ok": true, "id": …, "key": PLAINTEXT, "start": …} per create.
//
// Prints one JSON object: {"ok": true, "userId": …} or {"ok": false, "status": …, "code": …}.
// Exit status: 0 signed in / up, 1 refused by Better-Auth, 2 usage or environment error.
import { APIError } from "better-auth";
import { createAuth } from "./auth.js";

function out(value: unknown, code: number): never {
  process.stdout.write(`${JSON.stringify(value)}\n`);
  process.exit(code);
}

async function main(): Promise<void> {
  const [command, email, password, name] = process.argv.slice(2);
  const url = process.env.DATABASE_URL;
  if (!url) out({ ok: false, error: "set DATABASE_URL to the target database" }, 2);
  if (!process.env.BETTER_AUTH_SECRET) {
    // Sessions are signed with it; a throwaway one is fine for a one-shot check.
    process.env.BETTER_AUTH_SECRET = "replicator-auth-check-secret-0123456789abcdef";
  }
  if (command === "api-keys" && email) await apiKeys(url!, JSON.parse(email) as KeyOp[]);
  const valid =
    (command === "sign-in" && email && password) ||
    (command === "sign-up" && email && password && name);
  if (!valid) {
    out({ ok: false, error: "usage: auth-cli.ts sign-in EMAIL PASSWORD | sign-up EMAIL PASSWORD NAME | api-keys JSON" }, 2);
  }
  const { auth, close } = createAuth(url!);
  try {
    const result =
      command === "sign-in"
        ? await auth.api.signInEmail({ body: { email: email!, password: password! } })
        : await auth.api.signUpEmail({ body: { email: email!, password: password!, name: name! } });
    await close();
    out({ ok: true, userId: result.user.id, email: result.user.email }, 0);
  } catch (err) {
    await close();
    if (err instanceof APIError) {
      const body = (err.body ?? {}) as { code?: string; message?: string };
      out({ ok: false, status: err.status, code: body.code, message: body.message }, 1);
    }
    out({ ok: false, error: String(err) }, 2);
  }
}

type KeyOp =
  | { verify: string; permissions?: Record<string, string[]> }
  | { create: string; userId: string; permissions?: Record<string, string[]>; prefix?: string };

async function apiKeys(url: string, ops: KeyOp[]): Promise<never> {
  const { auth, close } = createAuth(url);
  const answers: unknown[] = [];
  try {
    for (const op of ops) {
      if ("verify" in op) {
        const r = await auth.api.verifyApiKey({
          body: { key: op.verify, ...(op.permissions ? { permissions: op.permissions } : {}) },
        });
        answers.push({
          valid: r.valid,
          code: r.error?.code ?? null,
          key: r.key
            ? { id: r.key.id, userId: r.key.referenceId, permissions: r.key.permissions ?? null }
            : null,
        });
      } else {
        const r = await auth.api.createApiKey({
          body: {
            name: op.create,
            userId: op.userId,
            ...(op.permissions ? { permissions: op.permissions } : {}),
            ...(op.prefix ? { prefix: op.prefix } : {}),
          },
        });
        answers.push({ ok: true, id: r.id, key: r.key, start: r.start });
      }
    }
  } catch (err) {
    await close();
    if (err instanceof APIError) {
      const body = (err.body ?? {}) as { code?: string; message?: string };
      out({ ok: false, status: err.status, code: body.code, message: body.message, answers }, 1);
    }
    out({ ok: false, error: String(err), answers }, 2);
  }
  await close();
  out(answers, 0);
}

void main();
