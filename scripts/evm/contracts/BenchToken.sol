// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title Benchmark token for scripts/bench.py.
/// @notice A plain ERC-20 as far as an indexer can see: the only event is the standard
///         `Transfer(address indexed from, address indexed to, uint256 value)`, one per balance move.
///         The operator (the deployer) moves many balances in one transaction (batchMint, batchMove),
///         so a million Transfer logs take a few thousand transactions instead of a million.
contract BenchToken {
    event Transfer(address indexed from, address indexed to, uint256 value);

    string public name;
    string public symbol;
    uint8 public constant decimals = 18;
    uint256 public totalSupply;
    mapping(address => uint256) public balanceOf;
    address public immutable operator;

    error NotOperator();
    error LengthMismatch();
    error InsufficientBalance(address from, uint256 balance, uint256 amount);

    constructor(string memory name_, string memory symbol_) {
        name = name_;
        symbol = symbol_;
        operator = msg.sender;
    }

    modifier onlyOperator() {
        if (msg.sender != operator) revert NotOperator();
        _;
    }

    /// @notice Standard ERC-20 transfer, so the token is usable by hand too.
    function transfer(address to, uint256 amount) external returns (bool) {
        _move(msg.sender, to, amount);
        return true;
    }

    /// @notice Mint amounts[i] to to[i]: one Transfer(0x0, to[i], amounts[i]) each.
    function batchMint(address[] calldata to, uint256[] calldata amounts) external onlyOperator {
        if (to.length != amounts.length) revert LengthMismatch();
        uint256 minted;
        for (uint256 i; i < to.length; ++i) {
            balanceOf[to[i]] += amounts[i];
            minted += amounts[i];
            emit Transfer(address(0), to[i], amounts[i]);
        }
        totalSupply += minted;
    }

    /// @notice Move amounts[i] from from[i] to to[i], in order: one Transfer each. Reverts (whole
    ///         transaction) if any holder lacks the balance at its turn.
    function batchMove(address[] calldata from, address[] calldata to, uint256[] calldata amounts)
        external
        onlyOperator
    {
        if (from.length != to.length || to.length != amounts.length) revert LengthMismatch();
        for (uint256 i; i < from.length; ++i) {
            _move(from[i], to[i], amounts[i]);
        }
    }

    function _move(address from, address to, uint256 amount) private {
        uint256 balance = balanceOf[from];
        if (balance < amount) revert InsufficientBalance(from, balance, amount);
        unchecked {
            balanceOf[from] = balance - amount;
        }
        balanceOf[to] += amount;
        emit Transfer(from, to, amount);
    }
}
