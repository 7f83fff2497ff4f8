"""A scripted Token-2022 security (xStocks-like) plus a classic Tokenkeg mint, driven step by
step. Every step sends real transactions through LiteSVM and produces one block
(`lookup_table_transfer` two; `describe`/`balances` none; `run_all` all of them).

Mint layout mirrors the recorded AAPLx mint: MetadataPointer(self) + TokenMetadata +
ScaledUiAmount + Pausable + PermanentDelegate + DefaultAccountState(initialized), with a
freeze authority. Roles: `issuer` (mint, metadata and multiplier authority) and
`compliance` (freeze, pause and permanent delegate).

Use in-process (`Scenario(chain).run("issue", {"holder": "alice", "amount": 1000})`) or over
the control RPC (`localnet_scenario ["issue", {...}]`). Amounts are raw base units (ints or
decimal strings). Steps whose transaction fails on-chain still land (fee charged) and return
the agave `err`; `expected` balances track only successful steps.
"""

from __future__ import annotations

import hashlib

from solders.address_lookup_table_account import AddressLookupTableAccount
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.system_program import (
    CreateAccountParams,
    TransferParams,
    create_account,
    create_lookup_table,
    extend_lookup_table,
)
from solders.system_program import transfer as system_transfer
from solders.token.associated import get_associated_token_address
from solders.transaction import Transaction, VersionedTransaction

from . import token_ix as T
from .chain import Chain
from .programs import TOKEN_2022_PROGRAM, TOKEN_PROGRAM
from .token_state import decode_mint, decode_token_account

MINT_BASE_WITH_TYPE = 166  # 165-byte base (mint + padding) + AccountType byte
FIXED_EXTENSION_SIZES = {"metadataPointer": 64, "permanentDelegate": 32, "defaultAccountState": 1,
                         "scaledUiAmount": 56, "pausable": 33}
METADATA_HEADROOM = 512  # rent pre-funded for later UpdateField reallocations
ACCOUNT_STATE = {"initialized": 1, "frozen": 2}
SOL = 10**9


class ScenarioError(ValueError):
    """Bad step name or arguments, or a transaction the runtime refused to include."""


def _amount(args: dict, name: str = "amount") -> int:
    value = args.get(name)
    try:
        amount = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        amount = None
    if amount is None or amount < 0 or amount >= 2**64:
        raise ScenarioError(f"{name} must be an integer number of raw base units in [0, 2^64), got {value!r}")
    return amount


def _name(args: dict, key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ScenarioError(f"{key} must be a non-empty holder name, got {value!r}")
    return value


class Scenario:
    def __init__(self, chain: Chain, seed: str = "security"):
        self.chain = chain
        self.seed = seed
        self.payer = self._keypair("payer")
        self.issuer = self._keypair("issuer")
        self.compliance = self._keypair("compliance")
        self.mint_keypair = self._keypair("mint")
        self.classic_mint_keypair = self._keypair("classic-mint")
        self.decimals = 6
        self.classic_decimals = 6
        self.holders: dict[str, Keypair] = {}
        self.expected: dict[str, int] = {}  # "mint:holder" -> raw balance after successful steps
        self.steps = {
            "setup": self.setup,
            "create_mint": self.create_mint,
            "create_holders": self.create_holders,
            "issue": self.issue,
            "transfer": self.transfer,
            "freeze": self.freeze,
            "thaw": self.thaw,
            "schedule_multiplier": self.schedule_multiplier,
            "update_metadata": self.update_metadata,
            "pause": self.pause,
            "resume": self.resume,
            "seize": self.seize,
            "redeem": self.redeem,
            "batch": self.batch,
            "v0_transfer": self.v0_transfer,
            "lookup_table_transfer": self.lookup_table_transfer,
            "classic_mint": self.classic_mint,
            "classic_transfer": self.classic_transfer,
            "describe": self.describe,
            "balances": self.balances,
            "run_all": self.run_all,
        }

    # ---- plumbing ----------------------------------------------------------------------

    def _keypair(self, role: str) -> Keypair:
        return Keypair.from_seed(hashlib.sha256(f"{self.chain.config.seed}:{self.seed}:{role}".encode()).digest())

    @property
    def mint(self) -> Pubkey:
        return self.mint_keypair.pubkey()

    @property
    def classic_mint_pubkey(self) -> Pubkey:
        return self.classic_mint_keypair.pubkey()

    def holder(self, name: str) -> Keypair:
        if name not in self.holders:
            self.holders[name] = self._keypair(f"holder:{name}")
        return self.holders[name]

    def ata(self, name: str, classic: bool = False) -> Pubkey:
        program = TOKEN_PROGRAM if classic else TOKEN_2022_PROGRAM
        mint = self.classic_mint_pubkey if classic else self.mint
        return get_associated_token_address(self.holder(name).pubkey(), mint, program)

    def run(self, step: str, args: dict | None = None) -> dict:
        if step not in self.steps:
            raise ScenarioError(f"unknown scenario step {step!r}; known: {sorted(self.steps)}")
        if args is not None and not isinstance(args, dict):
            raise ScenarioError("scenario args must be an object")
        return self.steps[step](args or {})

    def _send(self, instructions: list[Instruction], signers: list[Keypair], label: str,
              version: str = "legacy", lookup_tables: list[AddressLookupTableAccount] | None = None) -> dict:
        signers = [self.payer] + [s for s in signers if s.pubkey() != self.payer.pubkey()]
        blockhash = self.chain.latest_blockhash()
        if version == "v0":
            message = MessageV0.try_compile(self.payer.pubkey(), instructions, lookup_tables or [], blockhash)
            tx = VersionedTransaction(message, signers)
        else:
            tx = Transaction(signers, Message(instructions, self.payer.pubkey()), blockhash)
        produced = self.chain.produce_block([tx])
        if produced.rejected:
            raise ScenarioError(f"{label}: transaction rejected by the runtime: {produced.rejected[0].err}")
        record = produced.block.transactions[-1]
        return {"step": label, "slot": record.slot, "signature": record.signature, "err": record.err}

    def _bump(self, key: str, delta: int) -> None:
        self.expected[key] = self.expected.get(key, 0) + delta

    # ---- Token-2022 security -------------------------------------------------------------

    def setup(self, args: dict) -> dict:
        """Fund payer and authorities from the faucet (one block)."""
        lamports = int(args.get("lamports", 100 * SOL))
        faucet = self.chain.faucet
        ixs = [system_transfer(TransferParams(from_pubkey=faucet.pubkey(), to_pubkey=k.pubkey(), lamports=lamports))
               for k in (self.payer, self.issuer, self.compliance)]
        tx = Transaction([faucet], Message(ixs, faucet.pubkey()), self.chain.latest_blockhash())
        produced = self.chain.produce_block([tx])
        if produced.rejected:
            raise ScenarioError(f"setup: rejected: {produced.rejected[0].err}")
        record = produced.block.transactions[-1]
        return {"step": "setup", "slot": record.slot, "signature": record.signature, "err": record.err}

    def create_mint(self, args: dict) -> dict:
        self.decimals = int(args.get("decimals", 6))
        name = str(args.get("name", "Acme Corp Tokenized Share"))
        symbol = str(args.get("symbol", "ACMEx"))
        uri = str(args.get("uri", "https://example.invalid/acmex.json"))
        multiplier = float(args.get("multiplier", 1.0))
        default_state = str(args.get("defaultAccountState", "initialized"))
        if default_state not in ACCOUNT_STATE:
            raise ScenarioError(f"defaultAccountState must be one of {sorted(ACCOUNT_STATE)}")
        space = MINT_BASE_WITH_TYPE + sum(4 + size for size in FIXED_EXTENSION_SIZES.values())
        metadata_len = 4 + 64 + 4 * 3 + len(name.encode()) + len(symbol.encode()) + len(uri.encode()) + 4
        lamports = self.chain.svm.minimum_balance_for_rent_exemption(space + metadata_len + METADATA_HEADROOM)
        mint, issuer, compliance = self.mint, self.issuer.pubkey(), self.compliance.pubkey()
        ixs = [
            create_account(CreateAccountParams(from_pubkey=self.payer.pubkey(), to_pubkey=mint, lamports=lamports,
                                               space=space, owner=TOKEN_2022_PROGRAM)),
            T.initialize_metadata_pointer(mint, issuer, mint),
            T.initialize_permanent_delegate(mint, compliance),
            T.initialize_default_account_state(mint, ACCOUNT_STATE[default_state]),
            T.initialize_scaled_ui_amount(mint, issuer, multiplier),
            T.initialize_pausable(mint, compliance),
            T.initialize_mint2(TOKEN_2022_PROGRAM, mint, self.decimals, issuer, compliance),
            T.initialize_token_metadata(mint, issuer, mint, issuer, name, symbol, uri),
        ]
        out = self._send(ixs, [self.mint_keypair, self.issuer], "create_mint")
        out["mint"] = str(mint)
        return out

    def create_holders(self, args: dict) -> dict:
        names = args.get("holders", ["alice", "bob"])
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ScenarioError("holders must be a non-empty list of names")
        idempotent = bool(args.get("idempotent", False))
        ixs = [T.create_associated_token_account(self.payer.pubkey(), self.holder(n).pubkey(), self.mint,
                                                 TOKEN_2022_PROGRAM, idempotent) for n in names]
        out = self._send(ixs, [], "create_holders")
        out["accounts"] = {n: str(self.ata(n)) for n in names}
        return out

    def issue(self, args: dict) -> dict:
        holder, amount = _name(args, "holder"), _amount(args)
        ix = T.mint_to_checked(TOKEN_2022_PROGRAM, self.mint, self.ata(holder), self.issuer.pubkey(), amount,
                               self.decimals)
        out = self._send([ix], [self.issuer], "issue")
        if out["err"] is None:
            self._bump(f"security:{holder}", amount)
        return out

    def transfer(self, args: dict) -> dict:
        source, dest, amount = _name(args, "from"), _name(args, "to"), _amount(args)
        ix = T.transfer_checked(TOKEN_2022_PROGRAM, self.ata(source), self.mint, self.ata(dest),
                                self.holder(source).pubkey(), amount, self.decimals)
        out = self._send([ix], [self.holder(source)], "transfer")
        if out["err"] is None:
            self._bump(f"security:{source}", -amount)
            self._bump(f"security:{dest}", amount)
        return out

    def freeze(self, args: dict) -> dict:
        holder = _name(args, "holder")
        ix = T.freeze_account(TOKEN_2022_PROGRAM, self.ata(holder), self.mint, self.compliance.pubkey())
        return self._send([ix], [self.compliance], "freeze")

    def thaw(self, args: dict) -> dict:
        holder = _name(args, "holder")
        ix = T.thaw_account(TOKEN_2022_PROGRAM, self.ata(holder), self.mint, self.compliance.pubkey())
        return self._send([ix], [self.compliance], "thaw")

    def schedule_multiplier(self, args: dict) -> dict:
        """UpdateMultiplier, by default a 2-for-1 split effective 60 s after the tip's blockTime."""
        multiplier = float(args.get("multiplier", 2.0))
        if "effectiveTimestamp" in args:
            effective = int(args["effectiveTimestamp"])
        else:
            effective = self.chain.tip.block_time + int(args.get("delaySeconds", 60))
        ix = T.update_multiplier(self.mint, self.issuer.pubkey(), multiplier, effective)
        out = self._send([ix], [self.issuer], "schedule_multiplier")
        out["effectiveTimestamp"] = effective
        return out

    def update_metadata(self, args: dict) -> dict:
        field, value = str(args.get("field", "symbol")), args.get("value")
        if not isinstance(value, str):
            raise ScenarioError("value must be a string")
        # UpdateField reallocates the mint but moves no lamports: top up rent first.
        account = self.chain.svm.get_account(self.mint)
        needed = self.chain.svm.minimum_balance_for_rent_exemption(len(account.data) + len(field) + len(value) + 16)
        ixs = []
        if needed > account.lamports:
            ixs.append(system_transfer(TransferParams(from_pubkey=self.payer.pubkey(), to_pubkey=self.mint,
                                                      lamports=needed - account.lamports)))
        ixs.append(T.update_token_metadata_field(self.mint, self.issuer.pubkey(), field, value))
        return self._send(ixs, [self.issuer], "update_metadata")

    def pause(self, args: dict) -> dict:
        return self._send([T.pause(self.mint, self.compliance.pubkey())], [self.compliance], "pause")

    def resume(self, args: dict) -> dict:
        return self._send([T.resume(self.mint, self.compliance.pubkey())], [self.compliance], "resume")

    def seize(self, args: dict) -> dict:
        """Forced transfer by the permanent delegate (looks like an ordinary transferChecked)."""
        source, dest, amount = _name(args, "from"), _name(args, "to"), _amount(args)
        ix = T.transfer_checked(TOKEN_2022_PROGRAM, self.ata(source), self.mint, self.ata(dest),
                                self.compliance.pubkey(), amount, self.decimals)
        out = self._send([ix], [self.compliance], "seize")
        if out["err"] is None:
            self._bump(f"security:{source}", -amount)
            self._bump(f"security:{dest}", amount)
        return out

    def redeem(self, args: dict) -> dict:
        holder, amount = _name(args, "holder"), _amount(args)
        ix = T.burn_checked(TOKEN_2022_PROGRAM, self.ata(holder), self.mint, self.holder(holder).pubkey(), amount,
                            self.decimals)
        out = self._send([ix], [self.holder(holder)], "redeem")
        if out["err"] is None:
            self._bump(f"security:{holder}", -amount)
        return out

    def batch(self, args: dict) -> dict:
        """One Batch instruction (tag 255): mintToChecked to `holder`, then transferChecked to `to`."""
        holder, dest = _name(args, "holder"), _name(args, "to")
        issue_amount, move_amount = _amount(args, "issueAmount"), _amount(args, "transferAmount")
        inner = [
            T.mint_to_checked(TOKEN_2022_PROGRAM, self.mint, self.ata(holder), self.issuer.pubkey(), issue_amount,
                              self.decimals),
            T.transfer_checked(TOKEN_2022_PROGRAM, self.ata(holder), self.mint, self.ata(dest),
                               self.holder(holder).pubkey(), move_amount, self.decimals),
        ]
        out = self._send([T.batch(TOKEN_2022_PROGRAM, inner)], [self.issuer, self.holder(holder)], "batch")
        if out["err"] is None:
            self._bump(f"security:{holder}", issue_amount - move_amount)
            self._bump(f"security:{dest}", move_amount)
        return out

    def v0_transfer(self, args: dict) -> dict:
        """transferChecked in a version-0 message (getBlock then needs maxSupportedTransactionVersion)."""
        source, dest, amount = _name(args, "from"), _name(args, "to"), _amount(args)
        ix = T.transfer_checked(TOKEN_2022_PROGRAM, self.ata(source), self.mint, self.ata(dest),
                                self.holder(source).pubkey(), amount, self.decimals)
        out = self._send([ix], [self.holder(source)], "v0_transfer", version="v0")
        if out["err"] is None:
            self._bump(f"security:{source}", -amount)
            self._bump(f"security:{dest}", amount)
        return out

    def lookup_table_transfer(self, args: dict) -> dict:
        """Two blocks: create + extend an address lookup table holding both token accounts and
        the mint, then a v0 transferChecked that loads them from it (loadedAddresses)."""
        source, dest, amount = _name(args, "from"), _name(args, "to"), _amount(args)
        addresses = [self.ata(source), self.ata(dest), self.mint]
        create_ix, table = create_lookup_table({"authority_address": self.payer.pubkey(),
                                                "payer_address": self.payer.pubkey(),
                                                "recent_slot": self.chain.tip.slot})
        extend_ix = extend_lookup_table({"payer_address": self.payer.pubkey(), "lookup_table_address": table,
                                         "authority_address": self.payer.pubkey(), "new_addresses": addresses})
        created = self._send([create_ix, extend_ix], [], "lookup_table_transfer:create")
        if created["err"] is not None:
            raise ScenarioError(f"lookup table creation failed: {created['err']}")
        ix = T.transfer_checked(TOKEN_2022_PROGRAM, self.ata(source), self.mint, self.ata(dest),
                                self.holder(source).pubkey(), amount, self.decimals)
        out = self._send([ix], [self.holder(source)], "lookup_table_transfer", version="v0",
                         lookup_tables=[AddressLookupTableAccount(table, addresses)])
        if out["err"] is None:
            self._bump(f"security:{source}", -amount)
            self._bump(f"security:{dest}", amount)
        out["lookupTable"] = str(table)
        return out

    # ---- classic Tokenkeg mint -----------------------------------------------------------

    def classic_mint(self, args: dict) -> dict:
        """Tokenkeg mint + ATAs for `holders` + mintTo `amount` to the first (one block)."""
        names = args.get("holders", ["alice", "bob"])
        if not isinstance(names, list) or not names:
            raise ScenarioError("holders must be a non-empty list of names")
        amount = _amount(args) if "amount" in args else 1_000_000_000
        mint = self.classic_mint_pubkey
        lamports = self.chain.svm.minimum_balance_for_rent_exemption(82)
        ixs = [
            create_account(CreateAccountParams(from_pubkey=self.payer.pubkey(), to_pubkey=mint, lamports=lamports,
                                               space=82, owner=TOKEN_PROGRAM)),
            T.initialize_mint2(TOKEN_PROGRAM, mint, self.classic_decimals, self.issuer.pubkey(), None),
        ]
        ixs += [T.create_associated_token_account(self.payer.pubkey(), self.holder(n).pubkey(), mint, TOKEN_PROGRAM)
                for n in names]
        ixs.append(T.mint_to(TOKEN_PROGRAM, mint, self.ata(names[0], classic=True), self.issuer.pubkey(), amount))
        out = self._send(ixs, [self.classic_mint_keypair, self.issuer], "classic_mint")
        if out["err"] is None:
            self._bump(f"classic:{names[0]}", amount)
        out["mint"] = str(mint)
        return out

    def classic_transfer(self, args: dict) -> dict:
        """Plain `transfer` (tag 3): the mint is not among the transaction's keys."""
        source, dest, amount = _name(args, "from"), _name(args, "to"), _amount(args)
        ix = T.transfer(TOKEN_PROGRAM, self.ata(source, classic=True), self.ata(dest, classic=True),
                        self.holder(source).pubkey(), amount)
        out = self._send([ix], [self.holder(source)], "classic_transfer")
        if out["err"] is None:
            self._bump(f"classic:{source}", -amount)
            self._bump(f"classic:{dest}", amount)
        return out

    # ---- inspection ----------------------------------------------------------------------

    def describe(self, args: dict) -> dict:
        return {
            "mint": str(self.mint),
            "classicMint": str(self.classic_mint_pubkey),
            "decimals": self.decimals,
            "payer": str(self.payer.pubkey()),
            "issuer": str(self.issuer.pubkey()),
            "compliance": str(self.compliance.pubkey()),
            "holders": {n: {"wallet": str(k.pubkey()), "account": str(self.ata(n)),
                            "classicAccount": str(self.ata(n, classic=True))} for n, k in self.holders.items()},
        }

    def balances(self, args: dict) -> dict:
        """On-chain raw balances (processed state) next to the scenario's expectation."""
        onchain = {}
        for name in self.holders:
            for kind, classic in (("security", False), ("classic", True)):
                account = self.chain.svm.get_account(self.ata(name, classic))
                state = decode_token_account(bytes(account.data)) if account is not None else None
                if state is not None:
                    onchain[f"{kind}:{name}"] = state.amount
        mint_account = self.chain.svm.get_account(self.mint)
        mint_state = decode_mint(bytes(mint_account.data)) if mint_account is not None else None
        return {"onchain": onchain, "expected": dict(self.expected),
                "supply": mint_state.supply if mint_state else None}

    def run_all(self, args: dict) -> dict:
        """The whole story: issuance, transfers, freeze + failed transfer, split, metadata,
        pause, seizure, redemption, batch, v0, and a classic plain transfer."""
        script = [
            ("setup", {}),
            ("create_mint", {}),
            ("create_holders", {"holders": ["alice", "bob", "carol"]}),
            ("issue", {"holder": "alice", "amount": 1_000_000_000}),
            ("transfer", {"from": "alice", "to": "bob", "amount": 250_000_000}),
            ("freeze", {"holder": "bob"}),
            ("transfer", {"from": "bob", "to": "carol", "amount": 1_000_000}),  # fails: frozen (0x11)
            ("thaw", {"holder": "bob"}),
            ("schedule_multiplier", {"multiplier": 2.0, "delaySeconds": 60}),
            ("update_metadata", {"field": "symbol", "value": "ACMEx2"}),
            ("update_metadata", {"field": "name", "value": "Acme Corp Tokenized Share (split)"}),
            ("pause", {}),
            ("transfer", {"from": "alice", "to": "carol", "amount": 5}),  # fails: paused (0x43)
            ("resume", {}),
            ("seize", {"from": "bob", "to": "alice", "amount": 50_000_000}),
            ("redeem", {"holder": "alice", "amount": 100_000_000}),
            ("batch", {"holder": "alice", "to": "carol", "issueAmount": 10_000, "transferAmount": 4_000}),
            ("v0_transfer", {"from": "carol", "to": "bob", "amount": 1_000}),
            ("lookup_table_transfer", {"from": "bob", "to": "carol", "amount": 2_000}),
            ("classic_mint", {"holders": ["alice", "bob"], "amount": 1_000_000}),
            ("classic_transfer", {"from": "alice", "to": "bob", "amount": 400_000}),
        ]
        results = [self.run(step, step_args) for step, step_args in script]
        return {"steps": results, "describe": self.describe({})}

